// The EU cookie popup (.gdpr-popup-v3-main): a full-screen layer that takes every
// click until "accept" is pressed. C.mode: "load" (at once), "late" (after
// C.delay s), "again" (late, on every page, and back after each result load).
(() => {
  const C = window.FAKE_COOKIE;
  if (!C || !C.mode) return;
  const accepted = () => C.mode !== 'again' && document.cookie.includes('gdpr=1');
  function show() {
    if (accepted() || document.querySelector('.gdpr-popup-v3-main')) return;
    const d = document.createElement('div');
    d.className = 'gdpr-popup-v3-main';
    d.innerHTML = '<div class="gdpr-popup-v3-box"><p>Мы используем файлы cookie</p>' +
      '<button id="gdpr-popup-v3-button-all" type="button">Принять все</button></div>';
    d.querySelector('button').addEventListener('click', () => {
      document.cookie = 'gdpr=1; path=/';
      d.remove();
    });
    document.body.appendChild(d);
  }
  const later = () => setTimeout(show, (C.delay || 0) * 1000);
  if (C.mode === 'load') show(); else later();
  if (C.mode === 'again') window.addEventListener('fake:loaded', later);
})();
