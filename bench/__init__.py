"""Benchmarks: run by `make bench`, never by `make test`. Each prints a table and writes JSON
under bench/results/."""
