"""Load tests (locust) and the side-by-side benchmark; see loadtests/README.md."""
