"""The bundled default avatar: a speech corpus of generated voices and the build recipe."""
