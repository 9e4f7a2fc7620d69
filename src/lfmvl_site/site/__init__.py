"""The site half of ``lfmvl-site build``: browser assets, the runtime wheel, the page, dist/ assembly."""
