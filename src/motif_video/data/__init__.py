"""Training data: the shard format, preparation, buckets and the bucket-balanced sampler."""
