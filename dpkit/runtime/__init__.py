"""Running a job: the launcher, the rank entries (forked and torchrun), the training loop, the timeline recorder."""
