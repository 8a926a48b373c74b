"""The DRA kubelet plugin: registration, inventory publishing, prepare/unprepare with checkpoints, CDI specs."""
