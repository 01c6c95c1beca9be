"""What coserve keeps on disk about the requests it served (the decision log)."""
