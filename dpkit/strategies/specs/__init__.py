"""One spec per strategy: what the rest of dpkit may know about it (knobs, roles, checks, batch arithmetic,
baseline, cost and memory hooks). A spec imports its algorithm only in build() (and where a hook needs the
algorithm's own arithmetic, inside that hook), so config.py reaches no algorithm module."""
