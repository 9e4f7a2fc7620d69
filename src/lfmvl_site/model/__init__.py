"""The model half of ``lfmvl-site build``: resolve, check, quantize, optimize, shard and hash the graphs.

Entry points: :class:`~lfmvl_site.model.options.ModelBuildOptions`, the click decorator
:func:`~lfmvl_site.model.options.model_options` and :func:`~lfmvl_site.model.build.build_model`.
"""
