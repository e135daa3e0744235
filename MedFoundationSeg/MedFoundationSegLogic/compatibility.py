"""Which Slicer the modules run on. Kept to Python 3.6 syntax so an old Slicer can import it and say why it stops."""

MIN_SLICER = (5, 10)  # Python 3.12; the engine needs Python 3.10 or newer


def slicer_version_problem(major, minor, python=(3, 12)):
    """A one-line message when this Slicer is too old for the modules, else None."""
    if (int(major), int(minor)) >= MIN_SLICER and tuple(python[:2]) >= (3, 10):
        return None
    return ("MedFoundationSeg needs 3D Slicer {0}.{1} or newer (this is Slicer {2}.{3} with Python {4}.{5}); install "
            "a current Slicer from https://download.slicer.org and add the extension there.").format(
        MIN_SLICER[0], MIN_SLICER[1], major, minor, python[0], python[1])
