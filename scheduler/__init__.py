"""Control plane of the self-upgrading Space: tasks, queues, hardware and the lifecycle.

Nothing in this package imports torch or diffusers, so the CPU Space starts fast.
"""
