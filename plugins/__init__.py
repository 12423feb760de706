"""Built-in storage plugins.  Each registers through the same entry points a third party would use
(see pyproject.toml) and reaches the rest of the server only through mailserver.storage's interfaces."""
