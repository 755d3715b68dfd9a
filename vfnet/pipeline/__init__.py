"""The top stage: runs the other stages in order (train_all's unit graph and the demo)."""
