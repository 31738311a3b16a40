"""Using a trained model: predict on images (predict) and videos (video), outputs at full
input resolution (full_res), and the pictures of outputs (visualize, pictures)."""
