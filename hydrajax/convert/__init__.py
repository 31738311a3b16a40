"""Official PyTorch checkpoints to hydrajax weights: a pickle reader that runs no code
(torch_pickle) and the key tables of the official models (official)."""
