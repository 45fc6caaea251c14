"""Optuna studies."""
