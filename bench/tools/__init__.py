"""Studies of cost: scaling, profiling."""
