"""Peers of tabserve in `make bench`: the seed-style Flask app and MLServer's settings."""
