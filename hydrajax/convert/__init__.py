"""Official PyTorch checkpoints to hydrajax weights: a pickle reader that runs no code
(torch_pickle), the check of a pickle's opcodes before it is read (pickle_check) and the key
tables of the official models (official)."""
