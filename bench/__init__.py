"""camtester's benchmarks: each module with a `main()` prints its figures as ratios
to a baseline measured in the same run. `python -m bench` runs them all."""
