// The "Похожие" grid. Scrolling to the end loads the next page, S.scrollLoads
// times; then "Показать ещё" shows (S.buttonDelay s after each load) and each
// click fetches one more page. The button is disabled while a fetch runs. After
// the last page it is removed (end "button") or stays disabled ("disabled"); a
// 404 leaves it as it was; an HTTP error shows the FetchListNotice; broken JSON
// re-enables it for a retry. With S.clientRoute the result page's "Похожие"
// tab is a client-side route: history.pushState, then the p=0 XHR. A load asks
// for S.batch pages at once (each twice with S.duplicates), retries a 5xx up to
// S.retries times before the notice, follows a redirect to /showcaptcha, and
// with S.end "empty" takes an answer without results as the end ("endless": never). With
// S.errorRetry the error notice holds a "Повторить" button (the only way to load again).
(() => {
  const S = window.FAKE_SIMILAR;
  const ADAPTER = 'i-react-ajax-adapter:ajax';
  let list, box, btn, sentinel;
  let page = S.firstXhr, loading = false, scrollLeft = S.scrollLoads, finished = !!S.finished, timer = null;
  const named = (b, name) => b && ((b.name && b.name.block === name) || b.block === name);
  function esc(t) { const d = document.createElement('div'); d.textContent = t; return d.innerHTML; }
  function thumb(e) {
    const d = document.createElement('div');
    d.className = 'SerpItem';
    d.dataset.id = e.id;
    const href = '/images/search?img_url=' + encodeURIComponent(e.origUrl) + '&pos=' + e.pos + '&rpt=simage';
    d.innerHTML = '<div class="SerpItem-Thumb"><div class="ImagesContentImage"><a class="Link ImagesContentImage-Cover" href="' +
      esc(href) + '"><img class="ImagesContentImage-Image" src="' + esc(e.image) + '" alt="' + esc(e.alt) + '"></a></div></div>';
    return d;
  }
  function notice() {
    if (document.querySelector('.FetchListNotice')) return;
    const d = document.createElement('div');
    d.className = 'FetchListNotice FetchListButton-Error';
    d.textContent = 'Не удалось загрузить. Попробуйте ещё раз';
    if (S.errorRetry) {  // a retry control in the notice: it loads again
      const again = document.createElement('button');
      again.type = 'button';
      again.className = 'Button FetchListNotice-Retry';
      again.textContent = 'Повторить';
      again.addEventListener('click', () => { d.remove(); load(); });
      d.appendChild(document.createTextNode(' '));
      d.appendChild(again);
    }
    (box || list).after(d);
  }
  function showButton() {
    if (finished || !box.isConnected) return;
    box.style.display = '';
    btn.disabled = false;
  }
  function afterLoad() {
    if (finished) {
      if (S.end === 'disabled') { box.style.display = ''; btn.disabled = true; } else box.remove();
      return;
    }
    btn.disabled = false;
    if (scrollLeft > 0) {
      box.style.display = 'none';
      // still at the bottom after the load: the next one comes by itself
      if (sentinel.getBoundingClientRect().top <= innerHeight + 1) setTimeout(() => scrolled(), 50);
      return;
    }
    if (S.buttonDelay > 0) {
      box.style.display = 'none';
      clearTimeout(timer);
      timer = setTimeout(showButton, S.buttonDelay * 1000);
    } else showButton();
  }
  const sleep = ms => new Promise(r => setTimeout(r, ms));
  function query(p) {
    const req = {blocks: [{block: 'extra-content', params: {}, version: 2},
                          {block: {block: ADAPTER}, params: {type: 'ImagesApp', ajaxKey: S.filters ? 'serpList/fetchByFilters' : 'serpList/fetch'}, version: 2}],
                 metadata: {bundles: {lb: 'AdTb<Ny3Dfk'}, assets: {las: 'justifier-height=1;thumb-underlay=1'}, extraContent: {names: ['i-react-ajax-adapter']}}};
    const rest = S.filters ? '&rpt=imageview&cbir_page=similar&serpListType=horizontal&source-serpid=' + S.serpid + '&uinfo=sw-1280-sh-800-ww-1280-wh-720'
                           : '&rpt=imagelike&serpid=' + S.serpid;
    return 'format=json&request=' + encodeURIComponent(JSON.stringify(req)) + '&p=' + p + '&cbir_id=' +
           encodeURIComponent(S.cbir) + '&url=' + encodeURIComponent(S.url) + '&yu=' + S.yu + rest;
  }
  async function one(p) {
    let r;
    for (let tries = 0; ; tries++) {
      try {
        r = await fetch('/images/search?' + query(p), {headers: {'Accept': 'application/json, text/javascript, */*; q=0.01', 'X-Requested-With': 'XMLHttpRequest'}});
      } catch (e) {  // the connection dropped
        if (tries < (S.retries || 0)) { await sleep(300); continue; }
        return {p, error: true};
      }
      if (r.status >= 500 && tries < (S.retries || 0)) { await sleep(300); continue; }
      break;
    }
    if (r.redirected && r.url.includes('/showcaptcha')) return {p, captcha: r.url};
    if (r.status === 404) return {p, end404: true};
    if (!r.ok) return {p, error: true};
    let j = null;
    try { j = await r.json(); } catch (e) { j = null; }
    if (j && j.type === 'captcha') return {p, captcha: j.captcha['captcha-page']};
    return {p, j};
  }
  async function load() {
    if (loading || finished) return;
    loading = true;
    btn.disabled = true;
    const old = document.querySelector('.FetchListNotice');
    if (old) old.remove();  // a new try: the notice of the last one goes
    const calls = [];
    for (let i = 0; i < (S.batch || 1); i++) {
      calls.push(one(page + i));
      if (S.duplicates) calls.push(one(page + i));
    }
    let outs;
    try { outs = await Promise.all(calls); } catch (e) { outs = [{error: true}]; }
    let done = -1;
    for (const o of outs) {
      if (o.p !== undefined && o.p <= done) continue;  // the second answer of a duplicate
      if (o.captcha) { location.href = o.captcha; return; }
      if (o.error) { notice(); if (S.errorRetry) { loading = false; box.style.display = 'none'; return; } break; }
      if (o.end404 || !o.j) break;  /* a 404: nothing more, the button stays; broken JSON: again on the next click */
      const sl = o.j.blocks.find(b => named(b, ADAPTER)).params.adapterData.serpList;
      const ids = (sl.items.keys || Object.keys(sl.items.entities)).filter(id => sl.items.entities[id]);
      for (const id of ids) list.appendChild(thumb(sl.items.entities[id]));
      done = o.p;
      page = o.p + 1;
      finished = finished || sl.loadNextState === 'finished' || (S.end === 'empty' && ids.length === 0);
      window.dispatchEvent(new Event('fake:loaded'));
      if (finished) break;
    }
    loading = false;
    afterLoad();
  }
  function scrolled() {
    if (scrollLeft > 0 && !loading && !finished && sentinel.getBoundingClientRect().top <= innerHeight + 1) {
      scrollLeft -= 1;
      load();
    }
  }
  function start() {
    list = document.querySelector('.SerpList');
    box = document.querySelector('.FetchListButton');
    btn = box.querySelector('button');
    sentinel = document.querySelector('.SerpList-Sentinel');
    btn.addEventListener('click', (ev) => { if (!S.trustedOnly || ev.isTrusted) load(); });
    new IntersectionObserver((items) => { if (items.some(i => i.isIntersecting)) scrolled(); }).observe(sentinel);
    addEventListener('scroll', scrolled, {passive: true});
    const area = document.querySelector('.ScrollArea');
    if (area) area.addEventListener('scroll', scrolled, {passive: true});
    if (page === 0) load(); else afterLoad();
  }
  if (!S.clientRoute) { start(); return; }
  const tab = document.querySelector('a[data-cbir-page-type="similar"], .CbirNavigation-TabsItem_type_similar');
  tab.addEventListener('click', (ev) => {
    ev.preventDefault();
    if (list) return;
    if (!S.keepUrl) history.pushState({}, '', tab.getAttribute('href'));
    document.querySelectorAll('.CbirNavigation-TabsItem_active').forEach(a => a.classList.remove('CbirNavigation-TabsItem_active'));
    tab.classList.add('CbirNavigation-TabsItem_active');
    const main = document.createElement('div');
    main.innerHTML = '<div class="SerpList"></div><div class="SerpList-Sentinel"></div>' +
      '<div class="FetchListButton" style="display:none"><button type="button" class="Button FetchListButton-Button">' +
      '<span class="Button-Text">Показать ещё</span></button></div>';
    document.body.appendChild(main);
    start();
  });
})();
