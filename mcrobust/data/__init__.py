"""Data sets in memory, bonafide subsets, backdoor poisoning and the shared LightningDataModule."""
