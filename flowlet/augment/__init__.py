"""Age-histogram augmentation: plan how many synthetic brains each age bin needs, then generate them."""
