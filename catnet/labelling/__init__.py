"""`catnet label`: tag, review and teach in a local web page.

queue.py ranks pictures, teach.py fine-tunes, session.py holds the state, security.py decides
who may do what, app.py serves it all (Starlette), static/ is the page."""
