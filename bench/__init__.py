"""plugforge's benchmarks: ``bench/run`` runs them all and prints one table."""
