"""Sharded data parallelism (ZeRO): data parallelism in which each rank keeps 1/n of the training state.

Plain data parallelism keeps everything whole on every rank: the parameters (P bytes in fp32), their
gradients (P) and the optimizer's state (2P for Adam), 16 bytes per parameter. ZeRO (Rajbhandari et
al., 2020) cuts that state into n shards, one per rank, in three stages, each a layer on the one before:

  stage1.py  shards the optimizer state. Gradients are reduce-scattered (each rank receives the sum of its
             own shard only), each rank updates its shard of the parameters, and the updated parameters are
             all-gathered. A ring all-reduce *is* a reduce-scatter followed by an all-gather, so stage 1 sends
             exactly what plain data parallelism sends: 2(n-1)/n P per rank per step.
  stage2.py  also shards the gradients: a rank keeps only its gradient shard. A full gradient lives only
             until it is reduce-scattered (unit by unit during the backward with grad_sync='bucketed').
  stage3.py  also shards the parameters: a rank keeps only its shard. A block's parameters are all-gathered
             just before its forward and freed after it, gathered again just before its backward and freed
             when its gradients are reduce-scattered: 3(n-1)/n P per rank per step, 1.5x plain data
             parallelism. With grad_sync='bucketed' the next block's gather is started (prefetched) while
             this block computes, and reduce-scatters run while the backward goes on.
  fsdp2.py   grad_sync='fsdp' (stage 3 only): torch's FSDP2 instead (dpkit.comm.fsdp), the reference to
             compare with: the same schedule, written by PyTorch.

layout.py lays the parameters out in units (dpkit.buffers' flat buffers, cut into n equal shards).

Nothing is imported here: building a strategy imports the one stage it needs.
"""
