"""mowis offline data stages: YouTube-VIS ingestion and split, optical flow, pairwise affinities."""
