"""What a learner sees: figures (every function `*_plot`, returning a Figure), notebook panels, the ring trace, PS tables."""
