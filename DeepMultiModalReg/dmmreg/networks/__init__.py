"""Network building blocks shared by the learned methods (2D and 3D): :mod:`.layers` (convolutions
chosen by dimension) and :mod:`.unet` (an encoder-decoder with skip connections).  Architectures
that belong to one paper live with that method in :mod:`dmmreg.methods`."""
