"""Parameter server: workers push gradients to dedicated server ranks and pull fresh parameters back.

Read in this order: layout.py (which server owns which tensors), worker.py (push, pull), server.py
(average or apply, answer the pulls); then, for failures, backup.py (a server's replica) and recovery.py (what
happens when a server dies); specs/parameter_server.py is what the rest of dpkit knows about the strategy.

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
  the model as far as one sync step), and answers that worker's pull with its current parameters.
  `max_staleness` = s is the stale-synchronous-parallel (SSP) bound, counted in steps (clocks): a
  worker that has pushed c steps gets its parameters only once every worker has pushed c - s steps,
  so it waits, not the others. Servers only see step counts, so the bound needs no extra messages
  and k servers enforcing it independently cannot deadlock: the slowest worker is never held.

Staleness (RunResult.staleness, one row per update a server applied): in steps, the update's clock (its
worker's step) minus the clock of the parameters it was computed on (the steps every worker had pushed
when the server sent them): 0 in sync, never above s under SSP. In updates: how many updates the server
applied between that worker's pull and this push (up to n(s+1) - 1 with n workers).

Failure: the servers are a single point of failure. If one dies the workers' pulls fail, and run()
raises an error naming the parameter server's rank, unless `ps_recovery` says how to go on: 'checkpoint'
(every process again from the last checkpoint; the updates since are lost) or 'replicate' (sync only: each
server forwards every update to a backup process first, whose copy takes the dead server's place; nothing
applied is lost). recovery.py says why both restart every process. If a worker dies the run fails too (the
servers would wait for its pushes forever), naming that worker: dpkit does not continue without it.
"""
