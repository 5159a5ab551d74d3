"""Analysis: the cost model set against real runs and taken past them, a layer above the api.

predict (predicted step time next to a measured run), whatif (the cost model at scales a laptop cannot run),
memory_compare (the memory model next to measured bytes, and at cluster scale). The formulas themselves are in
dpkit/cost/; these modules run, measure and tabulate with them.
"""
