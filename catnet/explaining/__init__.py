"""Where the network looked: Grad-CAM / saliency maps, their drawings and their checks."""
