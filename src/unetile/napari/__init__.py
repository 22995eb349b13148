"""The napari plugin (npe2; manifest ``napari.yaml``): dock widgets that segment (segment.py)
and train (train.py) from the viewer, and a writer that saves a Labels layer as the label
image `unetile train` reads (layers_io.py). Install with ``pip install 'unetile[napari]'``.

Everything long runs off the UI thread (napari's ``thread_worker``); errors the user can
cause are shown as one-line notifications, the text `unetile` prints on the command line.
"""
