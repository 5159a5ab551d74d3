"""The cost model: alpha-beta(-gamma) prices of every pattern, predicted step times, the what-if at scale."""
