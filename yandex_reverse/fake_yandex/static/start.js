// The start page: the camera button opens the panel (only once the page has
// "hydrated", after S.hydration s; on mousedown only for the inline button); choosing a file uploads it with fetch() to
// endpoint A or B, then goes to the search page.
(() => {
  const S = window.FAKE_START;
  const camera = document.querySelector('[data-camera]');
  const popup = document.querySelector('.CbirPanel-Popup');
  const open = () => { popup.style.display = 'block'; popup.classList.add('Popup2_visible'); };
  setTimeout(() => camera.addEventListener(S.cameraEvent || 'click', open), (S.hydration || 0) * 1000);
  function fail(text) {
    const d = document.createElement('div');
    d.className = 'CbirUploadErrorNotify';
    d.innerHTML = '<span class="CbirUploadErrorNotify-IconError"></span><span class="CbirUploadErrorNotify-Text"></span>';
    d.lastChild.textContent = text;
    document.querySelector('.CbirPanel-Main').appendChild(d);
  }
  const named = (b, name) => b && ((b.name && b.name.block === name) || b.block === name);
  document.querySelector('.CbirCore-FileInput').addEventListener('change', async (ev) => {
    const file = ev.target.files[0];
    if (!file) return;
    try {
      let r;
      if (S.variant.startsWith('B')) {
        const fd = new FormData();
        fd.append('upfile', file, file.name);
        const req = JSON.stringify({blocks: [{block: 'cbir-uploader__get-cbir-id'}]});
        r = await fetch('/images/touch/search?rpt=imageview&format=json&request=' + encodeURIComponent(req),
                        {method: 'POST', body: fd, headers: {'X-Requested-With': 'XMLHttpRequest',
                         'Accept': 'application/json, text/javascript, */*; q=0.01'}});
      } else {
        r = await fetch('/images-apphost/image-download?cbird=111&images_avatars_size=preview&images_avatars_namespace=images-cbir',
                        {method: 'POST', body: file, headers: {'Content-Type': file.type || 'application/octet-stream'}});
      }
      if (r.status === 413) return fail('Изображение слишком большое');
      if (!r.ok) return fail('Не удалось загрузить изображение');
      const j = await r.json();
      if (j.type === 'captcha') { location.href = j.captcha['captcha-page']; return; }
      let query;
      if (S.variant.startsWith('B')) {
        const p = (j.blocks.find(b => named(b, 'cbir-uploader__get-cbir-id')) || j.blocks[0]).params;
        query = p.url ? p.url : 'cbir_id=' + encodeURIComponent(p.cbirId) + '&rpt=imageview&url=' +
                encodeURIComponent(p.originalImageUrl);
      } else {
        query = 'cbir_id=' + encodeURIComponent(j.cbir_id) + '&rpt=imageview&url=' +
                encodeURIComponent(j.url.replace(/\/preview$/, '/orig'));
      }
      location.href = '/images/search?' + query + '&cbir_page=search-by-image';
    } catch (e) { fail('Ошибка сети'); }
  });
})();
