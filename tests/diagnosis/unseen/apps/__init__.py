"""Apps written the way users write them; each attaches leakyspanner itself (see ``_profiling``)."""
