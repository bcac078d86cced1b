"""Fashion-MNIST: the files on disk, the LightningDataModule, and the user's own pictures."""
