"""pytest runs the exercise notebooks (nbval) with the reference solutions plugged in: each notebook's
`solution` cell loads exercises/solutions/ when DPKIT_EXERCISE_SOLUTIONS=1, and the kernels nbval starts
inherit this process's environment."""

import os

os.environ.setdefault("DPKIT_EXERCISE_SOLUTIONS", "1")
