"""Leaderboards, cost tables, plots, the page."""
