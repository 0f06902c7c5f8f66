"""Offline imitation of Yandex Images (``site``) and of the image web (``image_web``).

Tests and ``make demo`` start it on 127.0.0.1. The crawler and the downloader
know nothing of it: they take a base URL and a proxy like any user would.
"""
