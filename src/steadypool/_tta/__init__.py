"""Multi-scale test-time augmentation (CAM) on steadypool; imports torch lazily."""
