"""The soak test (`make soak`, `python -m loadtests.soak`): a real server under open-loop mixed
traffic for minutes, its memory, file descriptors, metrics files and latency watched over time.

    traffic.py   what is sent (request kinds, expected answers) and the open-loop sender
    samples.py   what is watched on the server's process tree and metrics directory
    windows.py   the series cut into windows; the run that holds them
    bounds.py    the bounds, and the check every run (CLI and tests) goes through
    report.py    table, summary, CSV and plot
    run.py       one soak against a running server
"""
