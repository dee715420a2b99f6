"""The end-to-end study: cohort → split → generator → augmentation → brain-age comparison → evaluation → report."""
