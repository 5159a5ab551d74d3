"""Parameter server: workers push gradients to dedicated server ranks and pull fresh parameters back.

Layout: `world_size` counts the workers (ranks 0..n-1); the `num_servers` = k servers come on top
(ranks n..n+k-1). The trainable parameters are split into k shards, whole tensors, balanced by size
(greedy: largest tensor to the lightest shard). Every worker and server builds the model from
`cfg.seed`, the single-process initialisation, so they start equal; each server keeps its shard and
an optimizer for it, and returns that shard as its part of the final state dict.

One worker step: forward/backward on its slice of the global batch, push each shard's gradient to
that shard's server, pull the shard back. Messages go over send/recv on a gloo group (host memory,
as classic parameter servers used TCP; on GPU runs the gradients are copied to the host).

- sync ("ps"): a server waits for all n gradients, averages them (in worker order, so runs are
  reproducible), steps its optimizer and answers every pull: the same parameters as single-process
  training on the global batch.
- async ("ps-async"): a server applies each gradient as it arrives, divided by n (so n pushes move
  the model as far as one sync step), and answers that worker's pull with its current parameters. Each update records its `staleness`: the
  updates this server applied between that worker's pull and its push (n-1 when workers move in
  lockstep). `max_staleness` = s is the stale-synchronous-parallel bound, counted in steps (clocks):
  a worker that has finished c steps gets the parameters for step c only once every worker has
  finished c - s steps, so it waits, not the others. Each update records that `clock_staleness`
  (c minus the slowest worker's step count when it pulled; always <= s). In update units this
  bounds staleness by (n-1)(2s+1). Servers only see step counts, so the bound needs no extra messages
  and k servers enforcing it independently cannot deadlock: the slowest worker is never held.

Failure: the servers are a single point of failure. If one dies the workers' pulls fail, and run()
raises an error naming the parameter server's rank. If an async worker dies the run fails too (the
servers would wait for its pushes forever), naming that worker: dpkit does not continue without it.
"""

from __future__ import annotations
