"""Split files, transforms, datasets, dataset configs, prepare commands and the toy dataset."""

from semiseg.data import resolvers

resolvers.register()
