"""Runtime, the ground floor: where data and results live, atomic writes, device and precision,
cache identities and the one resumable sharded writer. Knows nothing of the method."""
