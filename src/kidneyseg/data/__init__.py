"""Data sources: the KiTS layout and downloader, and the synthetic phantom cohort."""
