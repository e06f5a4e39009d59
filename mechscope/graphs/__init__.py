"""Attribution graphs on transcoders: the transcoder set, the frozen replacement model's
direct-effect graph, influence (see `graphs.attribution`)."""
