"""Model definitions: faithful Wan2.1 (models/wan) and the One4D additions built on it."""
