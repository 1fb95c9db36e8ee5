"""Labelled images: built-in sets, folders and CSVs, validation splits, batch loaders, transforms."""
