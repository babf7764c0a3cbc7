"""ferlive training: FER2013 data, augmentation, models, training, evaluation and export."""
