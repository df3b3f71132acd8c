"""`make bench`: tabserve side by side with its peers; see docs/performance.md."""
