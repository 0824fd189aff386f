"""Local stand-ins for real sources: a loopback HTTP server and the NOAA OISST replica. Not engine code:
the tests, the benchmarks and ``forge run --local-replica`` use them."""
