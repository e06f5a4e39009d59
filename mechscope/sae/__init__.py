"""Sparse autoencoders and transcoders: the modules (`modules`) and their architectures
(`architectures`), training (`train`) from an on-disk activation cache (`store`), evaluation
spliced into the model (`evaluate`), attaching them as model extensions (`splice`), latent
statistics and dashboards (`features`, `dashboard`), SAELens and other file formats
(`formats`), and the ``mechscope sae`` command line (`commands`)."""
